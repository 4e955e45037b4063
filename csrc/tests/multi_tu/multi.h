/* multi.h — what main.c and table.c share. */
#include "tha_uthash.h"
struct item { int id; UT_hash_handle hh; };
struct db { struct item *items; };
void add_item(struct db *d, struct item *it);
struct item *find_item(struct db *d, int id);
