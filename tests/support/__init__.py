"""Test helpers (no tests here): a real appliance in this process (`app`), query-proxy shortcuts
(`queries`), keyring fixtures (`keyring`), Pebble and a CA front for ACME (`acme`), the browser for
the console (`console`), log capture (`logs`), and a server speaking MongoDB's wire protocol
(`mongo_wire`)."""
