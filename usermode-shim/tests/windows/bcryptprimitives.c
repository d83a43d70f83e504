/*
 * bcryptprimitives.dll for Wine 8 only (never shipped, never used on Windows).
 *
 * Rust's standard library (1.78 and later) imports ProcessPrng from bcryptprimitives.dll,
 * which every supported Windows has (Windows 10+); Debian's Wine 8 does not provide it, so
 * no Rust program for x86_64-pc-windows-gnu starts under it. The Wine checks put this DLL
 * next to qosmarkctl.exe and qosmark.dll. ProcessPrng fills the buffer from the system RNG
 * and always returns TRUE, as documented; here the RNG is advapi32's RtlGenRandom
 * (exported as SystemFunction036), which Wine implements.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000u ? 0x40000000u : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
