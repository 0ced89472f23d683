-- Scheduled posts to a list (lmtpd reminders), and each occurrence recorded once.

CREATE TABLE reminders (
    id          INTEGER PRIMARY KEY,
    list_name   TEXT    NOT NULL,   -- by name: a removed list is reported, not silently cascaded away
    subject     TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('at', 'rrule', 'cron', 'event', 'ics')),
    spec        TEXT    NOT NULL,   -- the local time, RRULE, cron line or iCalendar text, as given
    timezone    TEXT    NOT NULL,
    anchor      TEXT    NOT NULL,   -- local start of the series (ISO), for RRULE and cron
    until_local TEXT,               -- local end of the series (ISO), inclusive
    count       INTEGER CHECK (count IS NULL OR count > 0),
    skip        TEXT    NOT NULL DEFAULT '',   -- local dates without an occurrence, comma-separated
    offsets     TEXT    NOT NULL DEFAULT '',   -- before the event: "7d,1d,2h"
    source_uid  TEXT,               -- iCalendar UID of an imported event
    paused      INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    created_at  REAL    NOT NULL,
    UNIQUE (list_name, source_uid)
);

CREATE TABLE reminder_occurrences (
    id          INTEGER PRIMARY KEY,
    reminder_id INTEGER NOT NULL REFERENCES reminders(id) ON DELETE CASCADE,
    due_at      REAL    NOT NULL,   -- the occurrence (UTC seconds); send-now: when it was asked for
    outcome     TEXT    NOT NULL CHECK (outcome IN ('sent', 'late', 'skipped', 'manual')),
    queue_id    TEXT    NOT NULL DEFAULT '',
    recorded_at REAL    NOT NULL,
    UNIQUE (reminder_id, due_at)
);
