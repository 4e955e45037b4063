/* test_uthash_bloom.c — test_uthash.c again with uthash's bloom filter
 * (HASH_BLOOM 16: an 8 KiB filter, the size of a 512-bucket array, which
 * must be typed as bytes all the same) and HASH_NONFATAL_OOM (a failed
 * allocation rolls the add back instead of aborting). */
#define HASH_BLOOM 16
#define HASH_NONFATAL_OOM 1
#include "test_uthash.c"
