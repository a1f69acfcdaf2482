/*-------------------------------------------------------------------------
 *
 * provider_azure.h
 *		The Azure Key Vault key provider:
 *		cmk_storage.key_uri = 'https://<vault-host>[:port]/keys/<name>[/<version>]'.
 *
 * Callers use it only through the CmkKeyProvider interface
 * (key_provider.h).  Its settings are the cmk_storage.azure_* and
 * cmk_storage.ca_file GUCs in the server, and CMK_AZURE_* / CMK_CA_FILE
 * environment variables in frontend tools; docs/azure-setup.md lists them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_PROVIDER_AZURE_H
#define CMK_PROVIDER_AZURE_H

#include "keys/key_provider.h"

extern const CmkKeyProvider cmk_azure_provider;

#endif							/* CMK_PROVIDER_AZURE_H */
