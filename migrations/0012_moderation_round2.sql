-- Moderation, second round: a list's own notification mode, and one pause per member.

-- How a list's moderators hear of held posts: 'each' (one mail per post), 'digest'
-- (one mail per `held process` run); NULL: [moderation] notify.
ALTER TABLE lists ADD COLUMN notify TEXT CHECK (notify IS NULL OR notify IN ('each', 'digest'));

-- A list's own size limit in bytes, below [lmtp] max_message_size; NULL: that one alone.
ALTER TABLE lists ADD COLUMN max_size INTEGER CHECK (max_size IS NULL OR max_size > 0);

-- Who paused a member's copies (paused_at/paused_until): 'member' by mail ('pause'),
-- 'admin' (lmtpd members set --pause); '' when not paused.
ALTER TABLE members ADD COLUMN paused_by TEXT NOT NULL DEFAULT ''
    CHECK (paused_by IN ('', 'member', 'admin'));
UPDATE members SET paused_by = 'member' WHERE paused_at IS NOT NULL;

-- The administrator's pause used to borrow delivery_disabled_at (kept for bounces now).
UPDATE members
   SET paused_at = delivery_disabled_at, paused_until = NULL, paused_by = 'admin',
       delivery_disabled_at = NULL, disabled_reason = '', disabled_reported = 0
 WHERE delivery_disabled_at IS NOT NULL AND disabled_reason = 'paused by the administrator';
