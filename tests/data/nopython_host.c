/* Test helper for tests/test_integration.py::test_non_python_host_fails_cleanly. */
/* A non-Python HDF5 host: reads a necoda dataset through HDF5's plugin path. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
typedef int64_t hid_t;
extern hid_t H5Fopen(const char *, unsigned, hid_t);
extern hid_t H5Dopen2(hid_t, const char *, hid_t);
extern int H5Dread(hid_t, hid_t, hid_t, hid_t, hid_t, void *);
extern int H5Dclose(hid_t);
extern int H5Fclose(hid_t);
extern int H5open(void);
extern hid_t H5T_NATIVE_USHORT_g;
int main(int argc, char **argv) {
    H5open();
    hid_t f = H5Fopen(argv[1], 0, 0);
    if (f < 0) { printf("OPEN FAILED\n"); return 2; }
    hid_t d = H5Dopen2(f, argv[2], 0);
    unsigned short *buf = malloc(1 << 24);
    int rc = H5Dread(d, H5T_NATIVE_USHORT_g, 0, 0, 0, buf);
    printf("READ rc=%d\n", rc);
    H5Dclose(d); H5Fclose(f);
    printf("CLEAN EXIT\n");
    return 0;
}
