DROP TABLE invoice_counters;
DROP TABLE invoices;
DROP TABLE refunds;
DROP TABLE payments;
