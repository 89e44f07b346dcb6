package com

import (
	"encoding/json"
	"time"
)

// The catalog: every row of the seed's table (com-jobs-api.txt), in its
// order, then the two firmware-download templates from the COM notes.
//
// Params are JSON Schema draft 2020-12. Required parameters come from the
// seed's "Required Data" column; optional ones, with their types, enums and
// ranges, from HPE's v1 job pages as summarised in COM-API-NOTES.md. Every
// schema allows additional properties: COM knows parameters we do not, and
// refusing them here would refuse jobs COM accepts. COM validates the rest.
//
// Slugs are written out rather than computed (this package must not import
// schemas, which imports it); a test checks each one against schemas.Slug of
// the lower-cased display name, which is how DESIGN.md and the request cases
// spell them ("server-ilo-firmware-update").
var catalog = []Template{
	{
		ID: "d0c13b58-748c-461f-9a61-c0c5c71f1bb4", Name: "Server Power Off", Slug: "server-power-off", CamelName: "ServerPowerOff",
		Description: "Power off a server", ResourceType: ResourceServer,
		Params: noParams, ExpectedDuration: 5 * time.Minute,
	},
	{
		ID: "0cbb2377-1834-488d-840c-d5bf788c34fb", Name: "Server Power On", Slug: "server-power-on", CamelName: "ServerPowerOn",
		Description: "Power on a server", ResourceType: ResourceServer,
		Params: noParams, ExpectedDuration: 5 * time.Minute,
	},
	{
		ID: "30110551-cad6-4069-95b8-dbce9bbd8525", Name: "Server Restart", Slug: "server-restart", CamelName: "ServerRestart",
		Description: "Restart a server", ResourceType: ResourceServer,
		Params: noParams, ExpectedDuration: 10 * time.Minute,
	},
	{
		ID: "aacfb3e0-6575-4d4f-a711-1ee1ae768407", Name: "Server Cold Boot", Slug: "server-cold-boot", CamelName: "ServerColdBoot",
		Description: "Cold boot a server", ResourceType: ResourceServer,
		Params: noParams, ExpectedDuration: 10 * time.Minute,
	},
	{
		ID: "fd54a96c-cabc-42e3-aee3-374a2d009dba", Name: "Server Firmware Update", Slug: "server-firmware-update", CamelName: "ServerFirmwareUpdate",
		Description: "Update firmware on a server", ResourceType: ResourceServer,
		Required: []string{"bundle_id"}, Params: serverFirmwareUpdateParams, ExpectedDuration: 2 * time.Hour,
	},
	{
		ID: "94caa4ef-9ff8-4805-9e97-18a09e673b66", Name: "Server iLO Firmware Update", Slug: "server-ilo-firmware-update", CamelName: "ServerILOFirmwareUpdate",
		Description: "Update iLO component firmware on a server", ResourceType: ResourceServer,
		Params: noParams, ExpectedDuration: time.Hour,
	},
	{
		ID: "139cc26b-ac93-4da0-826c-220d15e3a422", Name: "Server External Storage Details", Slug: "server-external-storage-details", CamelName: "ServerExternalStorageDetails",
		Description: "Collect external storage details", ResourceType: ResourceServer,
		Params: noParams, ExpectedDuration: 10 * time.Minute,
	},
	{
		ID: "91159b5e-9eeb-11ec-a9da-00155dc0a0c0", Name: "Group Firmware Update", Slug: "group-firmware-update", CamelName: "GroupFirmwareUpdate",
		Description: "Update firmware on servers in a group", ResourceType: ResourceGroup,
		Params: groupFirmwareUpdateParams, ExpectedDuration: 4 * time.Hour,
	},
	{
		ID: "23b8ba2a-6c46-4223-b028-919382c7dcac", Name: "Group Firmware Compliance", Slug: "group-firmware-compliance", CamelName: "GroupFirmwareCompliance",
		Description: "Calculate firmware compliance of servers in a group", ResourceType: ResourceGroup,
		Required: []string{"devices"}, Params: devicesRequiredParams, ExpectedDuration: 30 * time.Minute,
	},
	{
		ID: "c708eb57-235d-4ea8-9e21-8ceea2438773", Name: "Group Internal Storage Configuration", Slug: "group-internal-storage-configuration", CamelName: "GroupInternalStorageConfiguration",
		Description: "Configures internal storage volume for servers in a group", ResourceType: ResourceGroup,
		Required: []string{"devices"}, Params: devicesRequiredParams, ExpectedDuration: time.Hour,
	},
	{
		ID: "beff07ce-f36d-4699-9ac3-f872dcd63133", Name: "Group Apply Server Setting", Slug: "group-apply-server-setting", CamelName: "GroupApplyServerSetting",
		Description: "Apply server setting on a group", ResourceType: ResourceGroup,
		Required: []string{"redfish_subsystem"}, Params: groupApplyServerSettingParams, ExpectedDuration: 30 * time.Minute,
	},
	{
		ID: "1262f08e-79eb-4e9f-91d2-6984da9d31cd", Name: "Group Apply External Storage Settings", Slug: "group-apply-external-storage-settings", CamelName: "GroupApplyExternalStorageSettings",
		Description: "Apply external storage settings on servers in a group", ResourceType: ResourceGroup,
		Params: devicesOptionalParams, ExpectedDuration: 30 * time.Minute,
	},
	{
		ID: "db3620d4-19a4-4b54-9804-83f8f59d48a4", Name: "Group Apply OneView Server Templates", Slug: "group-apply-oneview-server-templates", CamelName: "GroupApplyOneViewServerTemplates",
		Description: "Apply server template settings on appliances in a group", ResourceType: ResourceGroup,
		Required: []string{"targetApplianceIds"}, Params: targetAppliancesParams, ExpectedDuration: 30 * time.Minute,
	},
	{
		ID: "977139e0-f9d9-4940-9418-e0c321b5a458", Name: "Group External Storage Compliance", Slug: "group-external-storage-compliance", CamelName: "GroupExternalStorageCompliance",
		Description: "Calculate external storage compliance of servers in a group", ResourceType: ResourceGroup,
		Params: devicesOptionalParams, ExpectedDuration: 30 * time.Minute,
	},
	{
		ID: "abfda355-6e58-4c00-be0a-af35dbd70398", Name: "Settings Update OneView Server Template", Slug: "settings-update-oneview-server-template", CamelName: "SettingsUpdateOneViewServerTemplate",
		Description: "Update server template settings", ResourceType: ResourceSetting,
		Required: []string{"templatesData"}, Params: templatesDataParams, ExpectedDuration: 30 * time.Minute,
	},
	{
		ID: "1c4ac4be-8eeb-49f2-a86a-fd8c9182616c", Name: "Appliance Firmware Update", Slug: "appliance-firmware-update", CamelName: "ApplianceFirmwareUpdate",
		Description: "Update firmware of an appliance", ResourceType: ResourceOneViewAppliance,
		Required: []string{"applianceFirmwareId"}, Params: applianceFirmwareUpdateParams, ExpectedDuration: 2 * time.Hour,
	},
	{
		ID: "b0001d36-6490-48ac-93af-a87adfb997ed", Name: "Carbon Footprint Report", Slug: "carbon-footprint-report", CamelName: "CarbonFootprintReport",
		Description: "Create carbon footprint report", ResourceType: ResourceFilter,
		Required: []string{"reportType"}, Params: carbonFootprintParams, ExpectedDuration: 30 * time.Minute,
		Deprecated: "HPE removed this job in July 2025; COM may refuse it",
	},
	{
		ID: "e2952628-2629-4088-93db-91742304ef0c", Name: "Group OS Installation", Slug: "group-os-installation", CamelName: "GroupOSInstallation",
		Description: "Install operating system on servers in a group", ResourceType: ResourceGroup,
		Params: groupOSInstallationParams, ExpectedDuration: 4 * time.Hour,
	},
	{
		ID: "d6595f1b-84e6-4587-ade5-656e2a5ea20d", Name: "Server Inventory", Slug: "server-inventory", CamelName: "ServerInventory",
		Description: "Collect server inventory", ResourceType: ResourceServer,
		Params: noParams, ExpectedDuration: 10 * time.Minute,
	},
	{
		ID: "b21ca9e2-8a1b-11ee-b9d1-0242ac120002", Name: "Server Network Connectivity", Slug: "server-network-connectivity", CamelName: "ServerNetworkConnectivity",
		Description: "Collect Server Network Connectivity", ResourceType: ResourceServer,
		Params: noParams, ExpectedDuration: 10 * time.Minute,
	},
	{
		ID: "e1d69e76-38cc-4079-9192-a380baea2973", Name: "Configure ignore iLO security risk settings", Slug: "configure-ignore-ilo-security-risk-settings", CamelName: "ConfigureIgnoreILOSecurityRiskSettings",
		Description: "update ilo security ignore settings", ResourceType: ResourceServer,
		Params: noParams, ExpectedDuration: 5 * time.Minute,
	},
	{
		ID: "a229a162-b43f-45b0-b7bb-692df77b9746", Name: "Group Apply OneView appliance settings", Slug: "group-apply-oneview-appliance-settings", CamelName: "GroupApplyOneViewApplianceSettings",
		Description: "Apply OneView appliance settings to specified appliance group members", ResourceType: ResourceGroup,
		Required: []string{"targetApplianceIds"}, Params: targetAppliancesParams, ExpectedDuration: 30 * time.Minute,
	},
	{
		// The seed spells this type "compute-ops-mgmt/oneview-appliances";
		// it is the same kind of resource as the canonical singular form.
		ID: "fc16aa48-c73c-4463-9112-e061383ebfa9", Name: "Refresh OneView appliance settings", Slug: "refresh-oneview-appliance-settings", CamelName: "RefreshOneViewApplianceSettings",
		Description: "Refresh the OneView appliance settings cache in Compute Ops Management", ResourceType: ResourceOneViewAppliance,
		Params: noParams, ExpectedDuration: 10 * time.Minute,
	},
	// The two download templates are named in the notes only; HPE documents
	// no parameters for them beyond bundle_id. A server has no firmware
	// baseline of its own, so Server Firmware Download requires bundle_id
	// (as Server Firmware Update does); a group has a baseline, so Group
	// Firmware Download takes bundle_id as optional (as Group Firmware Update
	// does). Anything else is passed through to COM unchecked.
	{
		ID: "0683ada8-1a89-49dd-bf04-6df715b708a6", Name: "Server Firmware Download", Slug: "server-firmware-download", CamelName: "ServerFirmwareDownload",
		Description: "Download a firmware bundle to a server", ResourceType: ResourceServer,
		Required: []string{"bundle_id"}, Params: bundleRequiredParams, ExpectedDuration: time.Hour,
	},
	{
		ID: "a17a7aa9-4540-4c21-bbf2-31af4ff65e98", Name: "Group Firmware Download", Slug: "group-firmware-download", CamelName: "GroupFirmwareDownload",
		Description: "Download a firmware bundle to servers in a group", ResourceType: ResourceGroup,
		Params: bundleOptionalParams, ExpectedDuration: 2 * time.Hour,
	},
}

// schemaHeader opens every parameter schema.
const schemaHeader = `"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "additionalProperties": true`

// Reused property definitions.
const (
	devicesProp  = `"devices": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "description": "ids of group member servers; default all members"}`
	bundleProp   = `"bundle_id": {"type": "string", "minLength": 1, "description": "firmware bundle id"}`
	boolProp     = `{"type": "boolean"}`
	parallelProp = `"parallel": {"type": "boolean", "default": true}, "stopOnFailure": {"type": "boolean"}`
)

func schema(s string) json.RawMessage { return json.RawMessage("{" + schemaHeader + s + "}") }

var (
	noParams = schema(`, "properties": {}`)

	serverFirmwareUpdateParams = schema(`, "required": ["bundle_id"], "properties": {` + bundleProp + `,
		"downgrade": ` + boolProp + `,
		"install_sw_drivers": ` + boolProp + `,
		"power_off": ` + boolProp + `,
		"prerequisite_check": {"type": "boolean", "default": true},
		"skip_blocklisted_components": ` + boolProp + `,
		"wait_for_power_off_or_reboot": ` + boolProp + `,
		"wait_for_power_off_or_reboot_timeout": {"type": "integer", "enum": [1, 2, 4, 8, 12, 24], "description": "hours"}}`)

	groupFirmwareUpdateParams = schema(`, "properties": {` + devicesProp + `, ` + parallelProp + `, ` + bundleProp + `,
		"downgrade": ` + boolProp + `,
		"installSWDrivers": ` + boolProp + `,
		"powerOff": ` + boolProp + `,
		"prerequisite_check": {"type": "boolean", "default": true}}`)

	devicesRequiredParams = schema(`, "required": ["devices"], "properties": {` + devicesProp + `}`)

	devicesOptionalParams = schema(`, "properties": {` + devicesProp + `}`)

	groupApplyServerSettingParams = schema(`, "required": ["redfish_subsystem"], "properties": {` + devicesProp + `,
		"redfish_subsystem": {"type": "string", "enum": ["BIOS", "ILO_SETTINGS"]},
		"batch_size": {"type": "integer", "minimum": 1, "maximum": 20}}`)

	targetAppliancesParams = schema(`, "required": ["targetApplianceIds"], "properties": {
		"targetApplianceIds": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}}`)

	templatesDataParams = schema(`, "required": ["templatesData"], "properties": {
		"templatesData": {"type": "array", "items": {"type": "object"}, "minItems": 1}}`)

	applianceFirmwareUpdateParams = schema(`, "required": ["applianceFirmwareId"], "properties": {
		"applianceFirmwareId": {"type": "string", "minLength": 1}}`)

	carbonFootprintParams = schema(`, "required": ["reportType"], "properties": {
		"reportType": {"const": "CARBON_FOOTPRINT"}}`)

	groupOSInstallationParams = schema(`, "properties": {` + devicesProp + `, ` + parallelProp + `,
		"osCompletionTimeoutMin": {"type": "integer", "minimum": 60, "maximum": 720, "default": 240}}`)

	bundleRequiredParams = schema(`, "required": ["bundle_id"], "properties": {` + bundleProp + `}`)

	bundleOptionalParams = schema(`, "properties": {` + devicesProp + `, ` + bundleProp + `}`)
)
