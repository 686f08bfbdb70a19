-- Objects that need both the tables and the Rust functions; runs last in the install script.

CREATE TRIGGER validate_metadata_extraction_paths
    BEFORE INSERT OR UPDATE ON process_model
    FOR EACH ROW EXECUTE FUNCTION validate_metadata_extraction_paths();
