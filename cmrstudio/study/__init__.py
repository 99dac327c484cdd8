"""Reader studies: design (which slices, balanced, in what order), answers (SQLite), scoring and reports."""
