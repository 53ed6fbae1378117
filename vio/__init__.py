"""vio: virtual intensive outpatient program rooms, rosters, schedules and attendance."""

__version__ = "0.1.0"
