<#
.SYNOPSIS
  Step 3: register a UDP flow through qosmark's QOS2 library, send, check the DSCP on the wire.

.PARAMETER QosmarkDll
  Path of qosmark.dll (the QOS2-compatible user-mode library built from usermode-shim).

.PARAMETER Destination
  IPv4 address of a second machine (not loopback: loopback is excluded from marking by
  design). If it runs `tshark -i <if> -f "udp dst port <Port>" -T fields -e ip.dsfield.dscp`,
  the values printed there are the independent check.

.DESCRIPTION
  1. `qosmarkctl status` (the device answers QueryStatus).
  2. Opens a UDP socket, connects it to Destination:Port, registers it with
     QOSCreateHandle / QOSAddSocketToFlow (QOSTrafficTypeVoice, non-adaptive): qWAVE's table
     gives Voice DSCP 56 (CS7).
  3. Captures with pktmon (counters and packets at the NDIS layers below TCP/IP) while sending
     20 datagrams, converts the capture to pcapng, and — when tshark is installed (Wireshark)
     — prints the DSCP of every captured datagram to that port and fails unless all are 56.
  4. Removes the flow and closes the handle; sends again and checks the mark is gone (0).

  Not run by this repository's CI.
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param(
    [Parameter(Mandatory)][string]$QosmarkDll,
    [Parameter(Mandatory)][string]$Destination,
    [int]$Port = 50123,
    [string]$Qosmarkctl = 'qosmarkctl.exe',
    [string]$Tshark = 'C:\Program Files\Wireshark\tshark.exe'
)
$ErrorActionPreference = 'Stop'
$work = Join-Path $env:TEMP "qosmark-smoke-$(Get-Date -Format yyyyMMddHHmmss)"
New-Item -ItemType Directory -Path $work | Out-Null

& $Qosmarkctl status
if ($LASTEXITCODE -ne 0) { throw "qosmarkctl status failed ($LASTEXITCODE)" }

$dllPath = (Resolve-Path $QosmarkDll).Path
Add-Type -TypeDefinition @"
using System;
using System.Runtime.InteropServices;
public static class QosMarkSmoke {
    [StructLayout(LayoutKind.Sequential)]
    public struct QOS_VERSION { public ushort MajorVersion; public ushort MinorVersion; }
    [DllImport(@"$dllPath", SetLastError = true)]
    public static extern bool QOSCreateHandle(ref QOS_VERSION version, out IntPtr handle);
    [DllImport(@"$dllPath", SetLastError = true)]
    public static extern bool QOSCloseHandle(IntPtr handle);
    [DllImport(@"$dllPath", SetLastError = true)]
    public static extern bool QOSAddSocketToFlow(IntPtr handle, IntPtr socket, IntPtr destAddr,
        int trafficType, uint flags, ref uint flowId);
    [DllImport(@"$dllPath", SetLastError = true)]
    public static extern bool QOSRemoveSocketFromFlow(IntPtr handle, IntPtr socket, uint flowId, uint flags);
}
"@

function Send-Datagrams([System.Net.Sockets.UdpClient]$udp, [int]$count) {
    $payload = [System.Text.Encoding]::ASCII.GetBytes('qosmark smoke test')
    for ($i = 0; $i -lt $count; $i++) { [void]$udp.Send($payload, $payload.Length); Start-Sleep -Milliseconds 20 }
}

function Capture-Dscp([System.Net.Sockets.UdpClient]$udp, [string]$name) {
    $etl = Join-Path $work "$name.etl"
    $pcap = Join-Path $work "$name.pcapng"
    & pktmon.exe filter remove | Out-Null
    & pktmon.exe filter add qosmark-smoke -t UDP -p $Port | Out-Null
    & pktmon.exe start --capture --pkt-size 128 --file-name $etl | Out-Null
    try { Send-Datagrams $udp 20 } finally { & pktmon.exe stop | Out-Null }
    & pktmon.exe etl2pcap $etl --out $pcap | Out-Null
    & pktmon.exe filter remove | Out-Null
    if (-not (Test-Path $Tshark)) {
        Write-Warning "tshark not found: open $pcap in Wireshark, or check on the receiver."
        return $null
    }
    $values = & $Tshark -r $pcap -Y "udp.dstport == $Port" -T fields -e ip.dsfield.dscp
    Write-Host "${name}: DSCP values seen: $(($values | Sort-Object -Unique) -join ', ')"
    return ,$values
}

$udp = New-Object System.Net.Sockets.UdpClient([System.Net.Sockets.AddressFamily]::InterNetwork)
$udp.Connect($Destination, $Port)
$version = New-Object QosMarkSmoke+QOS_VERSION
$version.MajorVersion = 1; $version.MinorVersion = 0
$qos = [IntPtr]::Zero
if (-not [QosMarkSmoke]::QOSCreateHandle([ref]$version, [ref]$qos)) {
    throw "QOSCreateHandle failed: $([Runtime.InteropServices.Marshal]::GetLastWin32Error())"
}
$flow = [uint32]0
$QOSTrafficTypeVoice = 4
$QOS_NON_ADAPTIVE_FLOW = 2
if (-not [QosMarkSmoke]::QOSAddSocketToFlow($qos, $udp.Client.Handle, [IntPtr]::Zero, $QOSTrafficTypeVoice, $QOS_NON_ADAPTIVE_FLOW, [ref]$flow)) {
    throw "QOSAddSocketToFlow failed: $([Runtime.InteropServices.Marshal]::GetLastWin32Error())"
}
Write-Host "flow $flow registered"
& $Qosmarkctl flows

$marked = Capture-Dscp $udp 'marked'
[void][QosMarkSmoke]::QOSRemoveSocketFromFlow($qos, $udp.Client.Handle, $flow, 0)
[void][QosMarkSmoke]::QOSCloseHandle($qos)
$unmarked = Capture-Dscp $udp 'unmarked'
$udp.Dispose()

if ($null -ne $marked) {
    if (@($marked).Count -eq 0 -or @($marked | Where-Object { $_ -ne '56' }).Count -ne 0) {
        throw 'FAIL: registered flow not marked DSCP 56 on every captured packet'
    }
    if (@($unmarked).Count -eq 0 -or @($unmarked | Where-Object { $_ -ne '0' }).Count -ne 0) {
        throw 'FAIL: packets still marked after the flow was removed'
    }
    Write-Host 'PASS: DSCP 56 while registered, 0 after removal.'
}
Write-Host "captures in $work"
