"""Taking a backup of a client: locally, or pulled from its host over SSH (the helper, or SFTP
where the host has no python3)."""
