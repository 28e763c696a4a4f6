ALTER TABLE payments DROP COLUMN customer_email;
