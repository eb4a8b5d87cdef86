/* The child test_core_windows.exe starts: it only has to exist for a
 * moment, so that its parent can read its handle table while it is
 * suspended and then see it run to completion. */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

int main(void)
{
    Sleep(100);
    return 0;
}
