"""Small utilities every layer uses: errors, logging, redaction, progress, CPUs, memory."""
