"""What every layer of the project shares and nothing of it depends on: the input error that
the command lines print as one line, atomic writes and output checks, devices and precision,
the command-line plumbing and shared flags, downloads, and the one policy by which files are
read (:mod:`common.serialization`: no file ever runs code)."""
