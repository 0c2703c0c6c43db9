#pragma once
// The lifetime of the MPI library in a routemoe process. MPI is started and finished
// explicitly by the command that needs it (never from a destructor, which must not run
// collectives); on an error, abort_world() ends every rank instead of hanging the survivors.

namespace routemoe::comm {

// MPI_Init_thread with MPI_THREAD_FUNNELED (only the main thread calls MPI). Idempotent.
void init_mpi(int* argc, char*** argv);
// MPI_Finalize if MPI is initialised and not yet finalised (a collective: every rank calls it).
// Then, when a part of the run asked for another exit status (request_exit_status), ends the
// process with it (std::exit), so that a command returning normally still reports it.
void finalize_mpi();
// Asks that the process end with `status` when it finishes normally (see finalize_mpi): the
// trainer asks for kExitPreempted after a preemption checkpoint. The last request wins.
void request_exit_status(int status) noexcept;
// The requested status (0: none).
int requested_exit_status() noexcept;
// True when the environment shows an MPI launcher (mpirun, srun): then commands start MPI;
// a plain `routemoe train` runs as one process without MPI.
bool launched_by_mpi() noexcept;
// True between init_mpi and finalize_mpi.
bool mpi_active() noexcept;
// MPI_COMM_WORLD rank and size (0 and 1 when MPI is not active).
int world_rank() noexcept;
int world_size() noexcept;
// Ranks of MPI_COMM_WORLD on this node (1 when MPI is not active). Collective when active.
int ranks_on_node();
// Ends all ranks with `code` (MPI_Abort when MPI is active and has more than one rank, else
// std::exit). Never returns.
[[noreturn]] void abort_world(int code) noexcept;

}  // namespace routemoe::comm
