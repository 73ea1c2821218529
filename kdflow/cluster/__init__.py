"""The cluster side: what is checked before a run leaves this machine, cron schedules, Trainer jobs."""
