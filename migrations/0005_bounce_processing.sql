-- Bounce processing: what each bounce said and about whom, and each member's score.

ALTER TABLE bounces ADD COLUMN member_id INTEGER REFERENCES members(id) ON DELETE SET NULL;
ALTER TABLE bounces ADD COLUMN address TEXT NOT NULL DEFAULT '';     -- the member it names
ALTER TABLE bounces ADD COLUMN kind TEXT NOT NULL DEFAULT '';
    -- permanent, temporary, policy, auto-reply, unattributed, unrecognised
ALTER TABLE bounces ADD COLUMN status TEXT NOT NULL DEFAULT '';      -- RFC 3463 code, when known
ALTER TABLE bounces ADD COLUMN diagnostic TEXT NOT NULL DEFAULT '';
ALTER TABLE bounces ADD COLUMN counted INTEGER NOT NULL DEFAULT 0;   -- raised the member's score

ALTER TABLE members ADD COLUMN bounce_score INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN last_bounce_day TEXT;                 -- the last day a point was counted
ALTER TABLE members ADD COLUMN last_bounce_at REAL;
ALTER TABLE members ADD COLUMN delivery_disabled_at REAL;            -- no copies while set
ALTER TABLE members ADD COLUMN disabled_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE members ADD COLUMN disabled_reported INTEGER NOT NULL DEFAULT 0;
