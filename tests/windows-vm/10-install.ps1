<#
.SYNOPSIS
  Step 1: trust the test certificate, install the qosmark package with pnputil, start it.

.PARAMETER PackageDir
  The folder `cargo make` produced (target\<profile>\qosmark_package): qosmark.sys,
  qosmark.inf, qosmark.cat and WDRLocalTestCert.cer.

.DESCRIPTION
  * imports WDRLocalTestCert.cer into LocalMachine\Root and LocalMachine\TrustedPublisher
    (the test certificate windows-drivers-rs' cargo-make flow creates and signs with);
  * `pnputil /add-driver qosmark.inf /install` stages the primitive driver package in the
    driver store and processes its DefaultInstall section (service QosMark, demand start);
  * `sc.exe start QosMark` loads the driver, then checks the device interface exists.

  Not run by this repository's CI.
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param([Parameter(Mandatory)][string]$PackageDir)
$ErrorActionPreference = 'Stop'

$inf = Join-Path $PackageDir 'qosmark.inf'
$cer = Join-Path $PackageDir 'WDRLocalTestCert.cer'
foreach ($f in @($inf, $cer, (Join-Path $PackageDir 'qosmark.sys'), (Join-Path $PackageDir 'qosmark.cat'))) {
    if (-not (Test-Path $f)) { throw "missing $f" }
}

foreach ($store in @('Cert:\LocalMachine\Root', 'Cert:\LocalMachine\TrustedPublisher')) {
    Import-Certificate -FilePath $cer -CertStoreLocation $store | Out-Null
    Write-Host "imported the test certificate into $store"
}

& pnputil.exe /add-driver $inf /install
# 3010 (ERROR_SUCCESS_REBOOT_REQUIRED) is a success that asks for a reboot.
if ($LASTEXITCODE -eq 3010) {
    Write-Warning 'pnputil: installed, a reboot is required before the service can start.'
} elseif ($LASTEXITCODE -ne 0) {
    throw "pnputil /add-driver failed with exit code $LASTEXITCODE"
}

& sc.exe start QosMark
if ($LASTEXITCODE -ne 0) { throw "sc start QosMark failed with exit code $LASTEXITCODE (see System event log / kernel debugger)" }
& sc.exe query QosMark

# \\.\QosMark must now open (any authenticated user may open it; the SDDL is in device.rs).
# .NET's FileStream refuses \\.\ device paths, so CreateFileW is called directly.
Add-Type -TypeDefinition @'
using System;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
public static class QosMarkOpen {
    [DllImport("kernel32.dll", CharSet = CharSet.Unicode, SetLastError = true)]
    public static extern SafeFileHandle CreateFileW(string name, uint access, uint share,
        IntPtr security, uint disposition, uint flags, IntPtr template);
}
'@
# GENERIC_READ | GENERIC_WRITE (0xC0000000, written in decimal: a PowerShell hex literal
# with the top bit set is a negative Int32), FILE_SHARE_READ | FILE_SHARE_WRITE, OPEN_EXISTING.
$h = [QosMarkOpen]::CreateFileW('\\.\QosMark', [uint32]3221225472, 3, [IntPtr]::Zero, 3, 0, [IntPtr]::Zero)
if ($h.IsInvalid) {
    throw "opening \\.\QosMark failed: $([Runtime.InteropServices.Marshal]::GetLastWin32Error())"
}
$h.Dispose()
Write-Host 'qosmark is loaded and \\.\QosMark opens.'
