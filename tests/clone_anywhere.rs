//! The README's commands work from a clone anywhere: in a directory only root may enter (root's
//! home is mode 700), the throwaway servers must still live where the `postgres` account can go.
//! This clones the repository into such a directory and starts and stops a server with the
//! scripts' own `start_cluster`, as `scripts/demo`, `scripts/bench` and `scripts/test` do.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

extern "C" {
    fn geteuid() -> u32;
}

#[test]
fn scripts_start_servers_from_a_clone_in_a_root_only_directory() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        eprintln!("skipped: only root has a directory the cluster's account cannot enter");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let private = std::env::temp_dir().join(format!("backfill-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let clone = private.join("backfill");
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(repo)
        .arg(&clone)
        .status()
        .unwrap();
    assert!(status.success(), "git clone failed");
    // The scripts' defaults, not the location scripts/test chose for its own servers.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new("bash")
        .current_dir(&clone)
        .env_remove("BACKFILL_CLUSTER_ROOT")
        .args([
            "-c",
            r#"source scripts/lib.sh
               dir="$CLUSTER_ROOT/clone-anywhere"
               start_cluster "$dir" "$1"
               trap 'stop_cluster "$dir"; rm -rf "$dir"' EXIT
               psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres \
                    -c 'CREATE EXTENSION backfill' -At -c 'SELECT extversion FROM pg_extension WHERE extname = $$backfill$$'"#,
            "clone-anywhere",
            &port.to_string(),
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&private);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
