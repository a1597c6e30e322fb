/* checkpoint.h: `dualpipe train --save DIR` and `--resume DIR`: the training state (fp32
 * parameters, optimizer moments, step count, data position, the model's configuration) in a
 * directory of safetensors files named as a PyTorch state_dict, whole or not at all, and read
 * back into a runtime of any schedule and rank count holding the same layers.
 *
 *   DIR/step-00000040/index.json          the step, model, optimizer, data position, and each
 *                                         file's size and CRC-32 (tools/checkpoint_index.h)
 *   DIR/step-00000040/rank-R.safetensors  what pipeline rank R holds (copy 0 of its stages)
 *   DIR/latest                            "step-00000040": the last checkpoint written
 *
 * A checkpoint is written as DIR/step-N.partial and renamed to DIR/step-N once every file and
 * its index are on disk. In a job of several processes each writes its own ranks' files, and
 * the process hosting rank 0 writes the index and renames, after all of them are done (and,
 * with --keep, removes the older checkpoints). `dualpipe checkpoint` reads one without a model. */
#ifndef DP_TOOLS_CHECKPOINT_H
#define DP_TOOLS_CHECKPOINT_H

#include "engine/reference.h"
#include "engine/runtime.h"
#include "engine/safetensors.h"
#include "tools/checkpoint_index.h"

/* What a checkpoint records besides the tensors: the run as configured, and where its data
 * came from ("teacher" or "file"). */
typedef struct {
    const dp_runtime_config *c;
    const char *data_source;
} checkpoint_run;

/* Before training, for --save DIR: DIR is a directory this process can create entries in, or a
 * new one (created; its parent must exist). A run that does not resume refuses a DIR already
 * holding checkpoints, so that one run's steps never mix with another's. 0, or the exit code
 * having said why. */
int checkpoint_prepare(const char *dir, int resuming);

/* Writes rt's state after `step` steps as DIR/step-<step>: called in every process of the job
 * (each writes its ranks' files; the root finishes). With keep > 0 the root then removes DIR's
 * checkpoints of earlier steps but the keep - 1 latest of them (checkpoints of later steps, left
 * by a run that was resumed from an earlier one, are neither counted nor removed); one that
 * cannot be removed is warned of, not fatal. Prints a line (step, directory, bytes, time, and
 * what was removed) unless quiet. 0, or the exit code having said why. */
int checkpoint_save(dp_runtime *rt, const checkpoint_run *run, const char *dir, int step, int keep, int quiet);

/* The checkpoint --resume DIR means: DIR itself when it holds an index.json, else the one
 * DIR/latest names, else DIR's step-N directory of the highest N. Written to path (size bytes).
 * 0, or the exit code (2) having said why there is none; messages begin with `who` (the option,
 * "--resume") where not NULL. */
int checkpoint_find(const char *who, const char *dir, char *path, size_t size);

/* The N of DIR's step-N directories, ascending, into *steps (malloc'ed, NULL when none) and *n.
 * 0, or -1 with errno (DIR cannot be listed, out of memory). */
int checkpoint_list(const char *dir, int **steps, int *n);

/* The run on the CPU holding every layer of the model x describes (1f1b on as few ranks as hold
 * the layers, micro-batches of one token, the optimizer's settings): a runtime to check the
 * tensors against. 0, or 2 having said what the index (read from index_path) holds that this
 * dualpipe cannot build. */
int checkpoint_model_run(const checkpoint_index *x, const char *index_path, dp_runtime_config *c);

/* A checkpoint read whole and checked without a model to load it into (`dualpipe checkpoint`). */
typedef struct {
    checkpoint_index index;
    dp_safetensors **files; /* [num_files], in the index's order */
    int num_files;
} checkpoint_contents;

/* Reads the checkpoint at path: its index (every rule of its own), each file it names (present,
 * of its size and CRC-32, a sound header, as many tensors as the index says) and no tensor in
 * two files. 0 (free it with checkpoint_contents_free), or the exit code (2 for a damaged or
 * incomplete checkpoint) having said what is wrong, naming the file and the rule. */
int checkpoint_read(const char *path, checkpoint_contents *out);
void checkpoint_contents_free(checkpoint_contents *c);

/* Every check checkpoint_load makes against rt's model, on the checkpoint at path read into c
 * (checkpoint_read), without writing into rt: 0, or the exit code having said why (messages
 * without --resume's prefix). */
int checkpoint_check_model(dp_runtime *rt, const checkpoint_run *run, const checkpoint_contents *c,
                           const char *path);

/* Checks the checkpoint at path (its index, each file's size, checksum and header, each tensor's
 * dtype and shape, the model against rt's) and writes it into every copy of every stage of rt
 * (and ref, when not NULL), with the step count: *step is the steps it had taken. Nothing is
 * written into rt unless everything checked. 0, or the exit code having said why (2 for a bad
 * or incompatible checkpoint: the file, the tensor and the rule broken). */
int checkpoint_load(dp_runtime *rt, dp_reference *ref, const checkpoint_run *run, const char *path, int *step);

#endif
