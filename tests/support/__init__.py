"""Test helpers (no tests here): a real appliance in this process (`app`), query-proxy shortcuts
(`queries`), keyring fixtures (`keyring`), Pebble and a CA front for ACME (`acme`), the browser for
the console (`console`), log capture (`logs`), and a server speaking MongoDB's wire protocol
(`mongo_wire`); for `appliance serve` subprocesses, their set-up (`served`) and JSON requests to
them (`json_api`); CLI verbs on a state directory with a required audit sink (`sink_verbs`);
older store versions for the migration tests (`store_migration`), test certificates
(`certificates`) and free loopback ports (`ports`); the test cost of Argon2id and scrypt
(`costs`) and the size of the scale tests (`scale`). A test module never imports from another
(tests/test_suite_marks.py checks): what several share lives here."""
