-- Argo CD health of a Weir Transform (weir.dev/v1alpha1): Suspended when scaled to zero,
-- Degraded when its Degraded condition holds or Ready failed for a reason someone must
-- fix, Progressing while the operator catches up or the workers roll out, else Healthy.
local hs = {}
local generation = obj.metadata.generation
local status = obj.status
if status == nil or (generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation)) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Weir operator to check the current generation"
  return hs
end
local conditions = {}
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    conditions[c.type] = c
  end
end
local function describe(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end
if obj.spec ~= nil and obj.spec.parallelism == 0 then
  hs.status = "Suspended"
  hs.message = "Scaled to zero workers"
  return hs
end
local degraded = conditions["Degraded"]
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end
local ready = conditions["Ready"]
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
local progressing = {
  InputsNotReady = true,
  NotChecked = true,
  NotDeployed = true,
  RollingOut = true,
  WorkersUnavailable = true,
}
if progressing[ready.reason] then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
hs.message = describe(ready)
return hs
