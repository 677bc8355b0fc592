"""Small programs the tests run as processes of their own (``python -m tests.helpers.programs.<name>``)."""
