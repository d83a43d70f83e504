<#
.SYNOPSIS
  Step 2: Driver Verifier for qosmark.sys: standard settings plus low-resources simulation.

.DESCRIPTION
  `verifier /flags 0x209BF /driver qosmark.sys`: 0x209BB is the value of Verifier's standard
  settings, and bit 2 (0x4) adds Low Resources Simulation (random allocation failures, which
  qosmark must survive by failing requests, never by crashing). Takes effect after a reboot;
  `-Reset` removes all Verifier settings (`verifier /reset`) — do that before uninstalling.

  Run the smoke test (30-smoke-test.ps1) with Verifier active; a violation is a bugcheck whose
  dump names the rule. Not run by this repository's CI.
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param([switch]$Reset, [switch]$Reboot)
$ErrorActionPreference = 'Stop'

if ($Reset) {
    & verifier.exe /reset
} else {
    & verifier.exe /flags 0x209BF /driver qosmark.sys
}
# verifier.exe returns 2 when a reboot is needed for the change; 0 when nothing changed.
if ($LASTEXITCODE -ne 0 -and $LASTEXITCODE -ne 2) { throw "verifier failed with exit code $LASTEXITCODE" }
& verifier.exe /querysettings
Write-Host 'Reboot for the Verifier settings to take effect.'
if ($Reboot) { Restart-Computer -Force }
