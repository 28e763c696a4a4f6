DROP TABLE voided_charges;
