-- Argo CD health check for aliasroll.io/ModelDeployment.
-- Installed as argocd-cm key resource.customizations.health.aliasroll.io_ModelDeployment: see
-- argocd-cm-patch.yaml beside this file, which carries this script verbatim (a unit test keeps them equal).
--
-- Argo CD does not read the Ready condition of custom resources by itself; this script does. The operator
-- writes status.observedGeneration and conditions that follow the Kubernetes API conventions:
--   Ready True (Serving, ScaledToZero)           -> Healthy
--   Ready False, reason RollingOut               -> Progressing
--   Ready False, any other reason                -> Degraded (RolloutStalled, ApplyFailed, InvalidSpec, ...)
--   spec.suspend true                            -> Suspended (alias moves are not followed)
--   no status yet, or status for an older spec   -> Progressing (the operator has not looked at it yet)
-- Argo CD runs gopher-lua, a Lua 5.1: keep to Lua 5.1 (no goto, no integer division, no utf8 library).
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

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status
local ready = find_condition(status, "Ready")
local ready_message = nil
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  ready_message = ready.message
end

if obj.spec ~= nil and obj.spec.suspend == true then
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

if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.status == "False" and ready.reason == "RollingOut" then
  hs.status = "Progressing"
elseif ready.status == "False" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = ready_message or ("Ready is " .. tostring(ready.status) .. " (" .. tostring(ready.reason) .. ")")
return hs
