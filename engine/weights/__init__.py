"""The release's files: where they live, their checksums, downloads, and loading them into our models."""
