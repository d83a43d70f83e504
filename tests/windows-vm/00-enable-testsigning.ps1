<#
.SYNOPSIS
  Step 0 on a disposable Windows test VM: allow test-signed kernel drivers.

.DESCRIPTION
  Runs `bcdedit /set testsigning on` and asks for a reboot. Secure Boot must be off for the
  option to take effect (Microsoft: "The TESTSIGNING Boot Configuration Option"); BitLocker
  may ask for its recovery key after the boot configuration changes. Never run this on a
  machine you care about.

  Not run by this repository's CI. See driver/README.md ("Testing on a Windows VM").
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param([switch]$Reboot)
$ErrorActionPreference = 'Stop'

try {
    if (Confirm-SecureBootUEFI) {
        throw 'Secure Boot is on: test-signed drivers will not load. Turn it off in the VM firmware settings first.'
    }
} catch [System.PlatformNotSupportedException] {
    Write-Host 'Legacy BIOS VM (no Secure Boot): fine.'
} catch [System.UnauthorizedAccessException] {
    throw 'Run this script as Administrator.'
}

& bcdedit.exe /set testsigning on
if ($LASTEXITCODE -ne 0) { throw "bcdedit failed with exit code $LASTEXITCODE" }
Write-Host 'Test signing is enabled after the next reboot ("Test Mode" appears on the desktop).'
if ($Reboot) { Restart-Computer -Force }
