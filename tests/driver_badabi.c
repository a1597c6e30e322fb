/* driver_badabi.c: a driver module built for a future ABI, which the registry must refuse
 * with a message naming the file and the ABI (test_engine_registry loads it). */
#include "engine/driver.h"

const dp_driver_export dualpipe_driver = {
    .abi_version = DP_DRIVER_ABI_VERSION + 41,
    .struct_size = sizeof(dp_driver_export),
    .name = "badabi",
    .description = "a driver from another ABI",
};
