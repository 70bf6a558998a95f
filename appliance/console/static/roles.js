// The roles, lowest first (the server's order: appliance/roles.py). The server decides what a
// role may do; the console only offers the names.
export const ROLES = ['viewer', 'developer', 'admin'];
