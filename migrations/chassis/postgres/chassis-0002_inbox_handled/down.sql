DROP INDEX inbox_handled;
