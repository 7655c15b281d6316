"""The shipped study files (TOML), read as package data (``search.study.studyfile``)."""
