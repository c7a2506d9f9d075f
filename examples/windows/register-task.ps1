<#
register-task.ps1 - schedule clever_export.py nightly at 01:30 with Task Scheduler.

Run in an elevated Windows PowerShell ("Run as administrator") after the install
steps in README.md:

    powershell -ExecutionPolicy Bypass -File C:\clever-export\register-task.ps1

It asks for the service account's password once; Task Scheduler stores it so
that the task runs whether the account is logged on or not. Change the four
values below to match your server. Running it again replaces the task.
#>

$ErrorActionPreference = 'Stop'

$TaskName = 'Clever export'
$Account  = 'DOMAIN\svc-clever'
$Folder   = 'C:\clever-export'
$Python   = Join-Path $Folder '.venv\Scripts\python.exe'

$Script = Join-Path $Folder 'clever_export.py'
foreach ($path in $Python, $Script) {
    if (-not (Test-Path -LiteralPath $path)) { throw "$path not found: install first (README.md)" }
}

# --quiet: a good run prints nothing; the log beside the script has every run.
$action = New-ScheduledTaskAction -Execute $Python -Argument "`"$Script`" --quiet" -WorkingDirectory $Folder
$trigger = New-ScheduledTaskTrigger -Daily -At 1:30am
# Stop a run that hangs after 2 hours (the longest bounded night with the default
# flags is about 6 minutes: docs/running.md, Timeouts); run a missed start (server was off at
# 01:30) as soon as possible; never start a second copy while one runs.
$settings = New-ScheduledTaskSettingsSet `
    -ExecutionTimeLimit (New-TimeSpan -Hours 2) `
    -StartWhenAvailable `
    -MultipleInstances IgnoreNew

$credential = Get-Credential -UserName $Account -Message "Password of $Account (stored by Task Scheduler)"

# -User with -Password: "Run whether user is logged on or not".
Register-ScheduledTask -TaskName $TaskName `
    -Description 'Nightly PowerSchool to Clever export (clever_export.py); see README.md' `
    -Action $action -Trigger $trigger -Settings $settings `
    -User $credential.UserName -Password $credential.GetNetworkCredential().Password `
    -RunLevel Limited -Force | Out-Null

Write-Host "Registered '$TaskName' (daily at 01:30 as $($credential.UserName))."
Write-Host "Run it now:        Start-ScheduledTask -TaskName '$TaskName'"
Write-Host "Last Run Result:   Get-ScheduledTaskInfo -TaskName '$TaskName'"
