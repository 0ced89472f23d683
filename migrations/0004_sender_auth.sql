-- Sender authentication: what each list requires, and what each message proved.

ALTER TABLE lists ADD COLUMN auth_require TEXT
    CHECK (auth_require IS NULL OR auth_require IN ('dkim-or-spf', 'dmarc', 'none'));  -- NULL: [auth] require
ALTER TABLE messages ADD COLUMN auth TEXT NOT NULL DEFAULT '';  -- e.g. "dkim=pass header.d=example.net; ..."
