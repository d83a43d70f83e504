<#
.SYNOPSIS
  Last step: stop qosmark, remove Verifier settings, delete the driver package.

.DESCRIPTION
  `sc.exe stop QosMark` unloads the driver (every handle to \\.\QosMark must be closed first,
  or the unload waits for the last one); `verifier /reset`; then
  `pnputil /delete-driver <oemNN.inf> /uninstall` for the package whose original name is
  qosmark.inf (found with `pnputil /enum-drivers`). Optionally removes the test certificate.

  Not run by this repository's CI.
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param([switch]$RemoveCertificate)
$ErrorActionPreference = 'Stop'

& sc.exe stop QosMark
& verifier.exe /reset | Out-Null

$published = $null
$current = @{}
foreach ($line in (& pnputil.exe /enum-drivers)) {
    if ($line -match '^\s*Published Name\s*:\s*(\S+)') { $current = @{ Published = $Matches[1] } }
    elseif ($line -match '^\s*Original Name\s*:\s*(\S+)') {
        if ($Matches[1] -ieq 'qosmark.inf') { $published = $current.Published }
    }
}
if ($null -eq $published) {
    Write-Warning 'qosmark.inf is not in the driver store (already removed?)'
} else {
    & pnputil.exe /delete-driver $published /uninstall
    if ($LASTEXITCODE -ne 0) { throw "pnputil /delete-driver $published failed ($LASTEXITCODE)" }
}
& sc.exe query QosMark

if ($RemoveCertificate) {
    foreach ($store in @('Cert:\LocalMachine\Root', 'Cert:\LocalMachine\TrustedPublisher')) {
        Get-ChildItem $store | Where-Object { $_.Subject -like '*WDRLocalTestCert*' } | Remove-Item
    }
}
Write-Host 'qosmark removed. (bcdedit /set testsigning off + reboot to leave test mode.)'
