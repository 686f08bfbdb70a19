"""The Pythons whose str() backfill reproduces, and where their Unicode data comes from.

Shared by scripts/unicode-tables (which writes src/extract/unicode_tables.rs) and scripts/differential
(which compares backfill with Python). Python 3.11 to 3.13 are the interpreters pyenv installs
on the build machine; Python 3.14 is not there, so its Unicode 16.0 database comes from
PyPI's unicodedata2 16.0.0 (the same UCD, compiled by the same generator as CPython's).
"""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

# python_version -> the Unicode version of its unicodedata module.
UNICODE = {"3.11": "14.0.0", "3.12": "15.0.0", "3.13": "15.1.0", "3.14": "16.0.0"}
VERSIONS = list(UNICODE)
UNICODEDATA2 = "16.0.0"
CACHE = os.environ.get("BACKFILL_PYTHON_CACHE") or (
    "/var/cache/backfill/python" if os.geteuid() == 0
    else os.path.expanduser("~/.cache/backfill/python"))


def interpreter(version):
    """The path of that Python, or None when it is not installed."""
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv"), "/root/.pyenv"]
    for root in roots:
        found = sorted(glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python3")))
        if found:
            return found[-1]
    for name in ("python" + version, "/usr/bin/python" + version):
        try:
            out = subprocess.run([name, "-c", "import sys; print(sys.executable)"],
                                 capture_output=True, text=True, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return None


def unicodedata2_path(python):
    """A directory holding unicodedata2 16.0.0 built for `python`, downloaded once."""
    tag = subprocess.run([python, "-c", "import sys; print(f'{sys.version_info[0]}{sys.version_info[1]}')"],
                         capture_output=True, text=True, check=True).stdout.strip()
    target = os.path.join(CACHE, f"unicodedata2-{UNICODEDATA2}-cp{tag}")
    if not os.path.isdir(target):
        os.makedirs(CACHE, exist_ok=True)
        download = target + ".download"
        subprocess.run([python, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "-d", download, f"unicodedata2=={UNICODEDATA2}"],
                       check=True)
        wheel = glob.glob(os.path.join(download, "*.whl"))[0]
        zipfile.ZipFile(wheel).extractall(target + ".partial")
        os.rename(target + ".partial", target)
        shutil.rmtree(download)
    return target


def unicode_source(version):
    """(interpreter, PYTHONPATH or None, module name) giving `version`'s Unicode database."""
    own = interpreter(version)
    if own is not None:
        return own, None, "unicodedata"
    if version != "3.14":
        sys.exit(f"Python {version} is not installed (pyenv install {version})")
    for other in ("3.13", "3.12", "3.11"):
        python = interpreter(other)
        if python is not None:
            return python, unicodedata2_path(python), "unicodedata2"
    sys.exit("no Python 3.11 to 3.13 to read unicodedata2 with")


def run_with_unicode(version, code, stdin=None):
    """Runs `code` in a Python whose module `ud` is `version`'s Unicode database."""
    return run_with_unicode_args(version, code, [], stdin)


def run_with_unicode_args(version, code, args, stdin=None):
    """run_with_unicode, with `args` in the code's sys.argv[1:]."""
    python, path, module = unicode_source(version)
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = path
    prologue = f"import {module} as ud\nassert ud.unidata_version == {UNICODE[version]!r}, ud.unidata_version\n"
    done = subprocess.run([python, "-c", prologue + code, *args], input=stdin,
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"Python {version} ({python}) failed:\n{done.stderr}")
    return done.stdout


# The code points whose str.isprintable() is true, as "start end" lines of inclusive ranges,
# printed by a Python whose module `ud` is the Unicode database (see run_with_unicode).
# CPython's Tools/unicode/makeunicodedata.py: printable when the space or its general category
# is not C* (Cc Cf Cs Co Cn) or Z* (Zs Zl Zp). Where `ud` is the interpreter's own database,
# every code point is also checked against str.isprintable().
PRINTABLE_RANGES = r"""
import sys
def printable(c):
    return c == 0x20 or ud.category(chr(c))[0] not in "CZ"
own = ud.__name__ == "unicodedata"
ranges, start = [], None
for c in range(0x110000):
    p = printable(c)
    if own and p != chr(c).isprintable():
        sys.exit(f"U+{c:04X}: the category rule says {p}, isprintable() {not p}")
    if p and start is None:
        start = c
    if not p and start is not None:
        ranges.append((start, c - 1)); start = None
if start is not None:
    ranges.append((start, 0x10FFFF))
for a, b in ranges:
    print(a, b)
"""


def printable_ranges(version):
    """The inclusive ranges of code points `version`'s str.isprintable() accepts."""
    lines = run_with_unicode(version, PRINTABLE_RANGES).split("\n")
    return [tuple(int(x) for x in line.split()) for line in lines if line]
