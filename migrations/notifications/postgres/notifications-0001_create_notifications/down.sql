DROP TABLE deliveries;
DROP TABLE order_recipients;
DROP TABLE webhooks;
