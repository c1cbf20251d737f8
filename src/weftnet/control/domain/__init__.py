"""Pure rules of the coordination server: records, addresses, names, credentials, what each
node sees. No I/O: no HTTP, no SQL, no clock (times are arguments), no sockets."""
