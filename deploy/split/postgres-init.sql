-- One database per module (deploy/compose.split.yaml runs this once, on an empty volume).
CREATE DATABASE bazaar_catalog;
CREATE DATABASE bazaar_orders;
CREATE DATABASE bazaar_billing;
CREATE DATABASE bazaar_notifications;
