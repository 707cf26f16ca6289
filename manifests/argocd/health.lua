-- Argo CD health check for aliasroll.io/ModelDeployment.
-- Installed as argocd-cm key resource.customizations.health.aliasroll.io_ModelDeployment: see
-- argocd-cm-patch.yaml beside this file, which carries this script verbatim (a unit test keeps them equal).
-- health_test.yaml and testdata/ beside it are its tests in Argo CD's own layout (upstream's
-- resource_customizations/aliasroll.io/ModelDeployment/): objects captured from the operator on a cluster.
--
-- Argo CD does not read the Ready condition of custom resources by itself; this script does. Ready stays True
-- while a canary runs (production serves), so the script also reads the canary's run (version, phase, step,
-- message): status.canary while it runs; once it ended, status.lastCanary (or status.canary, where operators
-- that have no lastCanary keep the record). The first rule that matches decides:
--   spec.suspend true                                          -> Suspended (alias moves are not followed)
--   no status yet, or status (or Ready) for an older spec      -> Progressing (the operator has not looked yet)
--   Ready False, any reason but RollingOut                     -> Degraded (RolloutStalled, ApplyFailed,
--                                                                 InvalidSpec, NameConflict, NothingToServe, ...)
--   the run's phase Aborted, and the abort stands (below)      -> Degraded
--   the run's phase Progressing, Analyzing or Promoting        -> Progressing (the canary steps, or promotes)
--   Ready False/RollingOut, or Ready Unknown                   -> Progressing
--   the run's phase AwaitingPromotion                          -> Suspended (a human moves the production
--                                                                 alias; a fixed-weight canary waits so too)
--   Ready True (Serving, ScaledToZero)                         -> Healthy (so after a canary Succeeded)
-- The record of an aborted run stays in status until @canary names another version, so it cannot
-- alone say Degraded. An abort stands while the registry's last answer (status.registry.aliases) still has
-- the canary alias (spec.canary.alias) on the aborted version (the run's version), and the production
-- alias not on it too: the registry still asks for a canary the operator will not run. Once @canary is
-- deleted (by hand, or by the operator with onAbort: removeAlias, after its next registry answer) or
-- joins production, the abort is over: health follows Ready and the message still names the abort. A new
-- version under @canary starts a new run, which replaces the record. A status without any registry answer
-- cannot tell: the abort stands.
-- The message is the run's (version, phase, step, message) when the canary decides, else Ready's.
-- Argo CD runs gopher-lua, a Lua 5.1: keep to Lua 5.1 (no goto, no integer division, no utf8 library), and
-- to its base and table libraries: it opens no string or math library for a script of argocd-cm.
local hs = {}

local function find_condition(status, condition_type)
  if status == nil or type(status.conditions) ~= "table" then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

-- A status (or condition) written for an older generation says nothing about the spec in place now.
local function is_stale(observed, generation)
  if generation == nil then
    return false
  end
  return observed == nil or observed < generation
end

local function non_empty(text)
  if type(text) == "string" and text ~= "" then
    return text
  end
  return nil
end

local function alias_of(section, default)
  if type(section) == "table" and non_empty(section.alias) ~= nil then
    return section.alias
  end
  return default
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local spec = obj.spec or {}
local status = obj.status
local ready = find_condition(status, "Ready")
local ready_message = nil
if ready ~= nil then
  ready_message = non_empty(ready.message)
end

if spec.suspend == true then
  hs.status = "Suspended"
  hs.message = ready_message or "spec.suspend is true: alias moves are not followed; the current versions keep serving"
  return hs
end

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the aliasroll operator to report status"
  return hs
end

if is_stale(status.observedGeneration, generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the aliasroll operator to observe generation " .. tostring(generation)
  return hs
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if ready.observedGeneration ~= nil and is_stale(ready.observedGeneration, generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition of generation " .. tostring(generation)
  return hs
end

ready_message = ready_message or ("Ready is " .. tostring(ready.status) .. " (" .. tostring(ready.reason) .. ")")

if ready.status == "False" and ready.reason ~= "RollingOut" then
  hs.status = "Degraded"
  hs.message = ready_message
  return hs
end

-- The canary's run: status.canary while it runs (a canary of an older version that only drains has no
-- phase), else how the last run ended: status.lastCanary where the operator keeps that record apart,
-- else status.canary, where it kept it before.
local function run_in(section)
  if type(section) == "table" and non_empty(section.phase) ~= nil and section.version ~= nil then
    return section
  end
  return nil
end
local canary = run_in(status.canary)
if canary == nil or canary.phase == "Aborted" or canary.phase == "Succeeded" then
  canary = run_in(status.lastCanary) or canary
end

local function canary_message(run)
  local text = "Canary version " .. tostring(run.version) .. " " .. run.phase
  local message = non_empty(run.message)
  -- The step, unless the message starts with it ("step 1/2: 25% of requests for 5m"). Argo CD opens no
  -- string library for a script of argocd-cm, but strings compare byte by byte: the texts that start with
  -- "step " are those from "step " up to "step!" (the next byte after the space).
  local starts_with_step = message ~= nil and message >= "step " and message < "step!"
  if non_empty(run.step) ~= nil and not starts_with_step then
    text = text .. ", step " .. run.step
  end
  if message ~= nil then
    text = text .. ": " .. message
  end
  return text
end

-- Whether the registry still asks for the aborted version under the canary alias (see the header).
local function abort_stands(run)
  local registry = status.registry
  if type(registry) ~= "table" then
    return true
  end
  local aliases = registry.aliases
  if type(aliases) ~= "table" then
    return false
  end
  local version = tostring(run.version)
  local canary_alias = alias_of(spec.canary, "canary")
  local production_alias = alias_of(spec.model, "production")
  return aliases[canary_alias] ~= nil and tostring(aliases[canary_alias]) == version
    and (aliases[production_alias] == nil or tostring(aliases[production_alias]) ~= version)
end

if canary ~= nil and canary.phase == "Aborted" and abort_stands(canary) then
  hs.status = "Degraded"
  hs.message = canary_message(canary) .. " (@" .. alias_of(spec.canary, "canary")
    .. " still names it: point it at another version, or delete it, to end the abort)"
  return hs
end

if canary ~= nil and (canary.phase == "Progressing" or canary.phase == "Analyzing" or canary.phase == "Promoting") then
  hs.status = "Progressing"
  hs.message = canary_message(canary)
  if ready.status ~= "True" then
    hs.message = hs.message .. "; " .. ready_message
  end
  return hs
end

if ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = ready_message
  return hs
end

if canary ~= nil and canary.phase == "AwaitingPromotion" then
  hs.status = "Suspended"
  hs.message = canary_message(canary)
  return hs
end

hs.status = "Healthy"
hs.message = ready_message
if canary ~= nil and canary.phase == "Aborted" then
  hs.message = hs.message .. "; canary version " .. tostring(canary.version) .. " was aborted (@"
    .. alias_of(spec.canary, "canary") .. " no longer names it)"
end
return hs
