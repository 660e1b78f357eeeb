"""hive test suite."""
