"""Small systems and data shared by the tests."""
