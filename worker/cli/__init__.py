"""The `identify-queue` command."""
