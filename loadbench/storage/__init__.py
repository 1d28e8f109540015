"""Where the bytes live: the checkpoint folder, the page cache, and the machine's read limits."""
