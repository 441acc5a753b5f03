/* KV_DEBUG guards invariant checks; setup.py sets it from RINGKV_DEBUG. */
#ifndef KV_DEBUG
#define KV_DEBUG 0
#endif
