-- Reminders, second round: a list's language for the dates in reminders, Markdown
-- bodies sent with an HTML alternative, and a pause that ends by itself.

ALTER TABLE lists ADD COLUMN language TEXT;                          -- NULL: English, ISO dates
ALTER TABLE reminders ADD COLUMN markdown INTEGER NOT NULL DEFAULT 0 CHECK (markdown IN (0, 1));
ALTER TABLE reminders ADD COLUMN paused_until REAL;                  -- UTC seconds; NULL: until resumed
