"""Attendance and dosage: attended time from the room's log, weekly dosage, review and export.

``intervals`` and ``dosage`` are pure arithmetic; ``records`` loads and reviews them in the
database; ``export`` writes CSV and FHIR; ``cli`` adds the ``vio export attendance`` and
``vio dosage`` commands.
"""
