-- Whom the order belongs to, as the charge named them: billing's events carry it, so that
-- their consumers (the refund e-mail) need no other event about the order. Every charge
-- gives it; the default only covers rows recorded before the column existed.
ALTER TABLE payments ADD COLUMN customer_email TEXT NOT NULL DEFAULT '';
