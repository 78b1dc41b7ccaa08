/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "tpm2.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tcti_device.h>

static int probe_device(const char *dev, char *desc, size_t desc_len)
{
	size_t size = 0;
	if (Tss2_Tcti_Device_Init(NULL, &size, NULL) != TSS2_RC_SUCCESS)
		return -EIO;
	_cleanup_free_ TSS2_TCTI_CONTEXT *tcti = calloc(1, size);
	if (!tcti)
		return -ENOMEM;
	if (Tss2_Tcti_Device_Init(tcti, &size, dev) != TSS2_RC_SUCCESS)
		return -EIO;
	int r = -EIO;
	ESYS_CONTEXT *ctx = NULL;
	TPMS_CAPABILITY_DATA *cap = NULL;
	if (Esys_Initialize(&ctx, tcti, NULL) == TSS2_RC_SUCCESS &&
	    Esys_GetCapability(ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
			       TPM2_CAP_TPM_PROPERTIES, TPM2_PT_MANUFACTURER, 1, NULL,
			       &cap) == TSS2_RC_SUCCESS &&
	    cap->data.tpmProperties.count > 0) {
		/* The manufacturer is four ASCII letters packed big-endian ("IBM ", "MSFT"). */
		uint32_t v = cap->data.tpmProperties.tpmProperty[0].value;
		char id[5];
		for (int i = 0; i < 4; i++) {
			char c = (char)(v >> (24 - 8 * i));
			id[i] = isprint((unsigned char)c) ? c : '?';
		}
		id[4] = '\0';
		for (int i = 3; i >= 0 && id[i] == ' '; i--)
			id[i] = '\0';
		snprintf(desc, desc_len, "%s, manufacturer %s", dev, id);
		r = 1;
	}
	Esys_Free(cap);
	if (ctx)
		Esys_Finalize(&ctx);
	Tss2_Tcti_Finalize(tcti);
	return r;
}

int tpm2_probe(char *desc, size_t desc_len)
{
	static const char *const devs[] = {"/dev/tpmrm0", "/dev/tpm0"};
	for (size_t i = 0; i < ARRAY_SIZE(devs); i++) {
		if (access(devs[i], R_OK | W_OK) < 0)
			continue;
		int r = probe_device(devs[i], desc, desc_len);
		if (r < 0)
			snprintf(desc, desc_len, "%s does not answer", devs[i]);
		return r;
	}
	snprintf(desc, desc_len, "none");
	return 0;
}
