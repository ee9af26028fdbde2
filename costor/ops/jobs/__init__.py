"""Jobs: the kinds the daemon runs, running one claimed job, notifications, and the
``costor jobs`` verb's requests."""
