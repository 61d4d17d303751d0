"""Small utilities every layer may use and that import nothing of fba's above them: atomic file writes
(``atomic``), JSON Lines (``jsonl``), loading files a user hands us without unpickling code (``safe_load``), the
CPU's numeric facts (``precision``), and processes that end with their parent (``lifetime``)."""
